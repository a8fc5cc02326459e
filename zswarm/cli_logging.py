"""Log set-up of the zswarm commands: one readable line per event, libraries' chatter kept out.

kademlia logs every RPC reply it gets at INFO ("got successful response", ~30% of a server's
log) and every new contact; its WARNINGs (a contact that stopped answering) still matter.
transformers and huggingface_hub draw progress bars, which land in a log file as one line of
carriage returns; commands whose output is a log turn them off.
"""
from __future__ import annotations

import logging
import os
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries held at WARNING unless --log-level DEBUG asks for everything.
CHATTY_LIBRARIES = ("kademlia", "rpcudp", "transformers", "huggingface_hub", "urllib3", "filelock")


def setup_logging(level: str) -> None:
    """Before heavy imports: the environment variables are read when transformers loads."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning" if level != "DEBUG" else "info")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    if level != "DEBUG":
        for name in CHATTY_LIBRARIES:
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
