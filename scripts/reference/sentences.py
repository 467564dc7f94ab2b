"""The 100 sentences of the demo and the embedding fixture (deterministic, varied lengths)."""

SUBJECTS = [
    "The scheduler", "A GPU worker", "Our platform team", "The on-call engineer",
    "A tired graduate student", "The nightly batch job", "This small language model",
    "The object store", "A careful reviewer", "The replica set",
]
ACTIONS = [
    "retries the failed download", "promotes the next task in the graph",
    "verifies every checksum before loading weights", "writes its results to MongoDB",
    "uploads the embeddings to the bucket", "cancels the run halfway through",
    "reads the model card to find the license", "waits for the lease to expire",
    "converts the weights to half precision", "answers questions about the weather",
]
TAILS = [
    "", " before lunch.", " while the cluster is under heavy load.",
    " because the previous attempt timed out after thirty seconds and nobody noticed.",
    " in Paris.", " without losing a single message, even when Redis is flushed.",
    " quickly.", " and then sends a short report to the team channel on Monday morning.",
    " on a quiet machine with two cores.", "!",
]


def sentences(n=100):
    out = []
    for i in range(n):
        s = SUBJECTS[i % 10]
        a = ACTIONS[(i * 3 + i // 10) % 10]
        t = TAILS[(i * 7 + i // 10) % 10]
        sentence = f"{s} {a}{t}"
        if not sentence.endswith((".", "!")):
            sentence += "."
        out.append(sentence)
    return out


if __name__ == "__main__":
    import json
    for s in sentences():
        print(json.dumps({"text": s}))
