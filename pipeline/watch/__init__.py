"""Watching imagery: the ledger of scenes already segmented."""
