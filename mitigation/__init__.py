"""MM-SY mitigation: prompt texts, synthetic training data, SFT and DPO."""
