"""tdm-alerts' stages (the intake, the treatment-context stage, the patient stage) and the
topology that routes each topic to one of them, decided once from the settings."""
