"""What users take away, read only from storage, in one-way steps:

rows (the trials read once into a Snapshot) -> tables, summary, hypervolume, accuracy (data
steps) -> plots (drawing steps) -> images (PNG/SVG through Chrome) -> export (the folder).
dashboard serves optuna-dashboard on the storage itself.
"""
