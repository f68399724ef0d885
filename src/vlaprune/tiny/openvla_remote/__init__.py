"""Remote code of the tiny plain-OpenVLA mirror (copied into its folder by vlaprune.tiny.openvla)."""
