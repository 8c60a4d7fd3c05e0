"""After a run: read its outputs, plot the mixture over training, export the learned mixture for reuse.

Modules: `run_outputs` (read and aggregate history.jsonl / trainer_log.jsonl), `plots` (matplotlib
figures), `report` (the `llamafactory-dids report` markdown summary), `export` (`llamafactory-dids
export`: JSON and ready-to-paste YAML fragments).
"""
