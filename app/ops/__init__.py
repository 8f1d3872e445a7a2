"""Operations: what keeps the hub healthy and accountable.

`health` (the probes and the storage endpoints), `upkeep` (the serving
process's background loops), `backup` (online backups, the service lock),
`restore` (restore, the start-up check) with `keyseal` (the sealed secret
key), `retention` (deleting what is past its period, compaction), `alerts`
(rules, evaluation, notifications), `audit` (the hash-chained log of changes),
`diagnose` (`agented diagnose`), `counters` (the process's Prometheus registry
and counters), `metrics` (/metrics) and `metrics_summary` (/api/v1/metrics).
"""
