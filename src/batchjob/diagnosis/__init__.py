"""Say why: from recorded facts about an attempt to a reason, a summary and a hint."""
