"""``attnguard sweep``: a grid of configs over seeds, as ordinary run directories, resumable.

``grid.py`` parses ``--grid``/``--seeds`` and names the runs; ``runner.py`` decides what each run still
needs and runs the child processes; ``table.py`` writes sweep.md, sweep.json and sweep.png; ``cli.py``
holds the flags and the command.
"""
