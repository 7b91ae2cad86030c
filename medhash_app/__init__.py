"""MedHash: similar-case search with cross-modal hashing."""

import os

# Idle OpenMP threads (FAISS, torch) sleep instead of spinning: keeps query latency steady when
# another process is busy. Must be set before either library starts its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
