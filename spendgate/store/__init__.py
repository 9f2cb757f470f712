"""Durable state: the directory (orgs, teams, users, agents, keys), the ledger, events."""
