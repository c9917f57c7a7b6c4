"""The reports: one package for `gear report`, `gear ablation-report`, `gear t2i-report` and
`gear released-report`.

    readers.py     checked inputs: JSON objects and dvclive curves, one-line errors naming the
                   file and the command that rewrites it
    verdicts.py    seed intervals and the one verdict vocabulary every table uses
    figures.py     curve smoothing, steps-to-baseline speed-ups, seed bands, figure helpers
    document.py    blocks (text, tables, plots) -> markdown and one self-contained HTML page
    paper.py       the paper's reference numbers (GEAR.md sections 7-9), typed once
    inputs.py      what `gear report` reads            main.py      `gear report` (+ claims.py)
    ablations.py   `gear ablation-report`
    t2i_inputs.py  what `gear t2i-report` reads         t2i.py       `gear t2i-report`
    published.py   the public checkpoints' published figures, each with its source and settings
    released.py    `gear released-report`: ours beside the published, with a tolerance verdict

"seed" means a study seed throughout; the paper's figures are `paper` / `PAPER_*`.
"""
