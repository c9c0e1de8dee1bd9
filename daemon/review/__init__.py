"""Review records: what the door did at each attempt, with its face, for the household to see."""
