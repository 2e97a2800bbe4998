"""Pure tensor functions behind TRPO's update; they know nothing of Stable-Baselines3's classes."""
