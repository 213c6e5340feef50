"""kvtier's tiers below the coordinator (the store): each tier object owns its state and I/O."""
