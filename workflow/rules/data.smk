# Data: webdataset shards + manifest (embedded photos or an ImageFolder).

rule shard:
    output:
        directory(SHARDS),
    params:
        digest=P.digest("data"),
    log:
        logfile("shard"),
    benchmark:
        benchfile("shard")
    threads: LIGHT_THREADS
    resources:
        **LIGHT,
    shell:
        "gear shard --params {PARAMS_FILE} > {log} 2>&1"
