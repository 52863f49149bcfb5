"""`python -m trainer ...`: datasets now; training commands are added by trainer.cli."""
from trainer.cli import main

raise SystemExit(main())
