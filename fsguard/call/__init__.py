"""The call as the stages see it, the chain of stages it goes through, and its guaranteed end."""
