"""What the evidence study compares: the paper's numbers and claims as data.

The poster's feasibility and ablation numbers, every arm in the order the
tables list them, and each comparison the paper makes (with the direction it
claims), for `evidence_report.py` to render; kept apart so the report is
only how the tables look, and a new arm or claim is one line here.
"""

# Seed poster (ResNet-56, CIFAR-10): ../shared/docs/seed_poster.txt lines
# 85-106. Feasibility columns: validation loss, condition number, accuracy.
PAPER_FEASIBILITY = {'l1': (0.1569, 0.4078, 93.57),
                     'fpgm': (0.1066, 0.1461, 93.57),
                     'gbn': (0.0710, 0.0414, 93.70),
                     'ekg': (0.0713, 0.0211, 93.85)}
FEASIBILITY_NAMES = {'l1': 'L1', 'fpgm': 'FPGM', 'gbn': 'GBN', 'ekg': 'EKG'}
# (search teacher, fine-tune teacher, arm, paper accuracy +- spread); the
# poster's first row is the unpruned network.
ABLATION = [('- (unpruned)', 'none, two views', 'dense', '93.84'),
            ('none', 'none', 'teacher_none', '93.78 (+-0.07)'),
            ('single', 'none', 'teacher_single', '93.54 (+-0.09)'),
            ('ensemble', 'none', 'ekg', '93.85 (+-0.10)'),
            ('ensemble', 'none, two views (control)', 'ekg_2view', '-'),
            ('ensemble', 'single', 'ekg_ft_single', '94.02 (+-0.08)'),
            ('ensemble', 'ensemble', 'ekg_ft_ensemble', '94.09 (+-0.07)')]
# Every arm of the study (seeds aside), in the order the tables list them.
ARM_ORDER = ['ekg', 'l1', 'fpgm', 'gbn', 'teacher_none', 'teacher_single',
             'ekg_ft_single', 'ekg_ft_ensemble', 'ekg_2view', 'dense',
             'tp_magnitude', 'tp_taylor', 'l1_uniform', 'per_channel',
             'ekg_rerun']
# The comparisons each table makes: (table, what, arm a, arm b, claim). The
# claim is the paper's: a's accuracy above b's ('>'), or none ('').
COMPARISONS = [
    ('feasibility', 'EKG vs FPGM scores', 'ekg', 'fpgm', '>'),
    ('feasibility', 'EKG vs GBN scores', 'ekg', 'gbn', '>'),
    ('feasibility', 'EKG vs L1 scores', 'ekg', 'l1', '>'),
    ('ablation', 'search teacher: ensemble vs none', 'ekg', 'teacher_none',
     '>'),
    ('ablation', 'search teacher: ensemble vs single', 'ekg',
     'teacher_single', '>'),
    ('ablation', 'ensemble knowledge vs the two-view control',
     'ekg_ft_ensemble', 'ekg_2view', '>'),
    ('ablation', 'single-teacher knowledge vs the two-view control',
     'ekg_ft_single', 'ekg_2view', '>'),
    ('ablation', 'ensemble vs single-teacher knowledge', 'ekg_ft_ensemble',
     'ekg_ft_single', '>'),
    ('baselines', 'EKG network vs the dense network (two views each)',
     'ekg_2view', 'dense', ''),
    ('baselines', 'EKG vs Torch-Pruning, magnitude (two views each)',
     'ekg_2view', 'tp_magnitude', '>'),
    ('baselines', 'EKG vs Torch-Pruning, Taylor (two views each)',
     'ekg_2view', 'tp_taylor', '>'),
    ('variants', 'greedy search vs uniform allocation, L1 scores', 'l1',
     'l1_uniform', ''),
    ('variants', 'per-channel vs the reference marking, ensemble knowledge',
     'per_channel', 'ekg_ft_ensemble', ''),
]
LANDSCAPE_NETS = ['ekg', 'fpgm', 'gbn', 'l1', 'teacher_none',
                  'teacher_single']
