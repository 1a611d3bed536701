"""Model registry and judge gate: versions with lineage, judged evaluations, promotion only when evals say so."""
