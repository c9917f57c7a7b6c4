# reports/: per-seed values, seed means with intervals, the claims table, curves and sample grids.
# Its inputs are what `gear report` reads (gear/report/inputs.py), over study.seeds, as the rules declare them.

from gear.report.inputs import producer_outputs

REPORT = paths.report_files()


rule report:
    input:
        [str(p) for p in producer_outputs(P)],
    output:
        str(REPORT["index.md"]),
        str(REPORT["index.html"]),
        directory(str(REPORT["figures"])),
        str(REPORT["claims.json"]),
    params:
        digest=P.digest("study"),  # the confidence level and the claims' margins change the report
    log:
        logfile("report"),
    benchmark:
        benchfile("report")
    threads: LIGHT_THREADS
    resources:
        **LIGHT,
    shell:
        "gear report --params {PARAMS_FILE} > {log} 2>&1"
