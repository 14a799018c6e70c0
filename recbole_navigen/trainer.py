"""Trainers for the plugin's models, named `<Model>Trainer`; models without one use RecBole's."""
