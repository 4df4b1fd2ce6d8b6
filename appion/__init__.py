"""appion: near-realtime cryo-EM pre-processing compatible with Leginon/Appion databases."""
__version__ = "2026.11.21"
