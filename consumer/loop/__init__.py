"""The consume-process-commit loop, independent of what its stages do with a record.

`Loop` turns (pace, poll, hand each record to the stage for its topic, commit when due), a
`Batch` is committed or aborted and rewound as one (`batch.py`), `Pacing` says when
(`pacing.py`), the rebalance listener and lag measurement sit beside them. An app supplies a
`Topology` (`topology.py`): its stages by topic, and what they do when partitions come and go.
"""
