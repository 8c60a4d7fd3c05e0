"""The only layer importing llamafactory and transformers.Trainer."""
