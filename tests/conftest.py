import os

# A missing hub download otherwise retries for ~45 s; tests must never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVCLIVE_LOGLEVEL", "ERROR")
