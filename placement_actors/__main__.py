"""``python -m placement_actors`` runs the command-line interface."""

from placement_actors.cli import main

raise SystemExit(main())
