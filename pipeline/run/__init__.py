"""How a stage runs: the runner (plan, fingerprints, run.json), stage contracts, executors (local, Ray), parted
outputs, the run lock and file I/O. Nothing here decides what a stage computes: this package is left out of every
stage's code hash (run/stage.py, code_files)."""
