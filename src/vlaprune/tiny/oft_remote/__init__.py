"""Remote-code files of the tiny OpenVLA-OFT mirror (`vlaprune.tiny.oft` copies them into its checkpoint
folders, as OFT checkpoints ship `configuration_prismatic.py` / `modeling_prismatic.py`). Never imported
from here: transformers loads them from the folder with trust_remote_code."""
