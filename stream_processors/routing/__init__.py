"""Routing: who must hear about an incident, according to the policy and the directory."""
