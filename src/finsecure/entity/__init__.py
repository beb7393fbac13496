"""Entities (people, accounts, cards, devices, IPs, ...) and the edges between them."""
