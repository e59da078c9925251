"""BigBird attention (Zaheer et al., NeurIPS 2020) on the token grid: window + global + random blocks."""
from .naive import bigbird_attention_naive, bigbird_random_blocks_naive
from .torch_impl import bigbird_attention, bigbird_random_blocks, grid_blocks

__all__ = ['bigbird_attention', 'bigbird_attention_naive', 'bigbird_random_blocks', 'bigbird_random_blocks_naive',
           'grid_blocks']
