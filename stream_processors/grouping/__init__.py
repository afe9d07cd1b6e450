"""Grouping: recognising later reports of an event that already has an open incident."""
