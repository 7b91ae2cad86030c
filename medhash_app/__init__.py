"""MedHash: similar-case search with cross-modal hashing."""
