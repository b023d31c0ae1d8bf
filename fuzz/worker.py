"""Entry point of a fuzz worker process (fuzz/harness.py Worker)."""

from fuzz.harness import worker_main

if __name__ == "__main__":
    worker_main()
