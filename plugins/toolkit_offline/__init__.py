"""First-party offline learners: behaviour cloning, the decision-LSTM and the decision transformer."""
