"""The synthetic gold-reward world (ARCHITECTURE.md section 4); see docs/synthetic_world.md."""

from jaxrlhf.data.synthetic.gold import ATTRIBUTE_NAMES, GoldSpec, gold_components, gold_reward
from jaxrlhf.data.synthetic.gold import gold_token_contributions, length_term, prompt_topic
from jaxrlhf.data.synthetic.tokenizer import WorldTokenizer
from jaxrlhf.data.synthetic.world import SPLITS, SFTRecord, World, WorldConfig, default_world, pad_rows
