"""``python -m edgekit.cli`` runs the ``edgekit`` command (used where the script is not on PATH)."""

from edgekit.cli.main import main

main()
