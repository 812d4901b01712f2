"""``python -m fastlt`` runs the command line (as torchrun's ``-m fastlt`` will)."""
from fastlt.cli import main

main()
