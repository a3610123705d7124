"""Compress an AgentFarm ``simulation.db`` with a lossless model (``python -m meaning_transform.codec``)."""
