"""``python -m ferroq.cli``: the ``ferroq`` command."""

from . import main

main(prog_name="ferroq")
