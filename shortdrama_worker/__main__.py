"""``python -m shortdrama_worker`` is the same as the ``shortdrama-worker`` script."""

from shortdrama_worker.cli import main

main()
