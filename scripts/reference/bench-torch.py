"""PyTorch side of scripts/bench-models: sentence-transformers on the same CPU and sentences."""
import json, os, sys, time
import torch
from sentence_transformers import SentenceTransformer

model_dir, sentences_path = sys.argv[1], sys.argv[2]
budget = float(os.environ.get("BENCH_SECONDS", "10"))
texts = [json.loads(l)["text"] for l in open(sentences_path) if l.strip()]
model = SentenceTransformer(model_dir, device="cpu")
for batch in (32, 1):
    model.encode(texts[:32], batch_size=batch)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget:
        model.encode(texts, batch_size=batch, normalize_embeddings=True)
        n += len(texts)
    rate = n / (time.perf_counter() - start)
    print(f"pytorch embeddings batch {batch}: {rate:.1f} sentences/s "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
