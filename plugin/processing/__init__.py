"""The Processing provider: one algorithm per backend job, generated from the job schemas."""
