"""The paper's analyses beyond "these latents switch refusal off" (Yeo et al. 2025):
linear probes in and out of distribution (`probes`); more to come (categories,
upstream -> downstream, jailbreaks, minimal sets)."""
