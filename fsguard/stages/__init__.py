"""The stages of the chain: screening, outbound, verification, recording, routing."""
