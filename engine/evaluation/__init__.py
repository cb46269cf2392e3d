"""Evaluating a finished run: does the tuned model beat its base, and a baseline that needs no
training, on the task; and what did the fine-tune cost on general instructions (forgetting)?

`evaluate_run` (in `run_eval`) is the entry point the command line (`adapter-studio eval`) and the
Evaluate page share. Metrics come from the libraries people check against (`rouge-score`,
`sacrebleu`, scikit-learn); the report is a Markdown file in the run folder.

May import: data (rows and rendering as in training), inference (the run's models), training.checkpoints.
Never imports the training session or the window.
"""
