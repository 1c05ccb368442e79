"""Knowledge distillation: students that learn from the live mixture, and the BTX student built from the experts."""
