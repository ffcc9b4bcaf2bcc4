"""`python -m inbox.simulator`: the simulator without Django (what `manage.py dify_simulator` runs)."""

from __future__ import annotations

from inbox.simulator.server import main

main()
