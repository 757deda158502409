"""Blocks shared by several paper models: conv-bn-act, upsampling operators, context modules, heads and
RoI operators. A block used by one paper only stays in that paper's file."""
