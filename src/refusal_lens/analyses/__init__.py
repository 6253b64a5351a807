"""The paper's analyses beyond "these latents switch refusal off" (method.md section 6):
linear probes in and out of distribution (`probes`); more to come (categories,
upstream -> downstream, jailbreaks, minimal sets)."""
